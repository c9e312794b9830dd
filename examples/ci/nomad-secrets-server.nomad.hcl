# nomad-secrets serve as a Nomad service job: three instances on three
# nodes, each checked on /healthz, TLS and the shared secrets from a Nomad
# variable. The server is stateless: put your load balancer (or Consul /
# Nomad service discovery) in front, and point the CI runners at it.
#
# Before the first run:
#
# 1. Install the server on every node that may run it (the exec driver
#    sees /usr, where it lives; Python 3.10+), from the release's wheel (it
#    is not on PyPI; docs/ci.md has the other ways):
#
#      python3 -m venv /usr/local/lib/nomad-secrets
#      /usr/local/lib/nomad-secrets/bin/pip install './nomad_secrets-X.Y.Z-py3-none-any.whl[server]'
#
# 2. Put the TLS certificate and key, and the shared secrets, in the job's
#    Nomad variable (only this job may read nomad/jobs/<its name>):
#
#      nomad var put nomad/jobs/nomad-secrets-server \
#        tls_crt=@server.crt tls_key=@server.key \
#        drone_secret="$(openssl rand -hex 32)"
#
#    Or take them from Vault: a template with {{ with secret "pki/issue/ci"
#    "common_name=nomad-secrets.example.com" }} and a vault block.
#
# 3. The nodes read AWS with their instance profile: no keys in this file.
#
# The config and the files it names are checked as always (owner, mode, no
# symlink); --nomad-task skips only the directories above them, which Nomad
# makes 0777 and isolates per task (docs/ci.md, "Trust").

job "nomad-secrets-server" {
  type = "service"

  group "serve" {
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    update {
      max_parallel = 1 # one instance at a time: the others keep answering
    }

    network {
      port "https" {}
    }

    service {
      name     = "nomad-secrets"
      provider = "nomad"
      port     = "https"

      check {
        type            = "http"
        protocol        = "https"
        path            = "/healthz"
        tls_skip_verify = true # the check runs on the node; the certificate names the service
        interval        = "10s"
        timeout         = "2s"
      }
    }

    task "serve" {
      driver       = "exec"
      user         = "nobody"
      kill_timeout = "35s" # more than server.shutdown_seconds: requests in flight finish

      config {
        command = "/usr/local/lib/nomad-secrets/bin/nomad-secrets"
        args    = ["serve", "--config", "${NOMAD_TASK_DIR}/config.toml", "--nomad-task"]
      }

      template {
        destination = "secrets/tls.crt"
        perms       = "0400"
        uid         = 65534 # nobody, the task's user: the files are its own
        gid         = 65534
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/nomad-secrets-server" }}{{ .tls_crt }}{{ end }}
        EOT
      }

      template {
        destination = "secrets/tls.key"
        perms       = "0400"
        uid         = 65534
        gid         = 65534
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/nomad-secrets-server" }}{{ .tls_key }}{{ end }}
        EOT
      }

      template {
        destination = "secrets/drone-secret"
        perms       = "0400"
        uid         = 65534
        gid         = 65534
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/nomad-secrets-server" }}{{ .drone_secret }}{{ end }}
        EOT
      }

      template {
        destination = "local/config.toml"
        perms       = "0400"
        uid         = 65534
        gid         = 65534
        data        = <<-EOT
          [server]
          listen = "{{ env "NOMAD_ADDR_https" }}"
          tls_cert = "{{ env "NOMAD_SECRETS_DIR" }}/tls.crt"
          tls_key = "{{ env "NOMAD_SECRETS_DIR" }}/tls.key"
          shutdown_seconds = 30

          [aws]
          region = "us-east-1"

          [drone]
          secret_file = "{{ env "NOMAD_SECRETS_DIR" }}/drone-secret"

          [[drone.policy]]
          repo = "acme/*"
          event = "push"
          branch = "main"
          allow = ["aws-sm:ci/{repo}/**", "aws-sm:ci/shared/*"]

          [[drone.policy]]
          repo = "acme/*"
          allow = ["aws-sm:ci/{repo}/pr/*"]
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
