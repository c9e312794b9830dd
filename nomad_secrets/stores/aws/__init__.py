"""AWS: Secrets Manager (``secretsmanager``) and SSM Parameter Store
(``ssm``), through botocore alone (no boto3: two API calls need no resource
layer).

``store`` holds what both share: the client with the operator's explicit
region, endpoints and credentials (never a job's), botocore's errors turned
into messages that name the reference; ``http`` bounds what an answer may
be before botocore parses it.
"""
