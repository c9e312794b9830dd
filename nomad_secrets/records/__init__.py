"""What each fetch leaves for the operator: the audit record (``audit``:
syslog and a JSON-lines file), the node_exporter textfile metrics
(``metrics``), and the observer that writes both once the answer is out
(``observe``), so that neither ever sits between a fetch and its answer.

May import: ``core``, ``process``. Never a store or a front door: a record
describes a fetch, it takes no part in it.
"""
