# Vault decides what this job may read: the plugin logs in with the task's
# workload identity (see docs/policy.md for the Vault role and policy).
job "web" {
  group "web" {
    task "web" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      identity {
        name = "secrets"
        aud  = ["vault.io"]
        env  = true
        ttl  = "1h"
      }
      secret "db" {
        provider = "vault-kv"
        path     = "vault:secret/nomad/default/web/db"
        env {
          NOMAD_WORKLOAD_TOKEN = "${NOMAD_TOKEN_secrets}"
        }
      }
      env {
        DB_PASSWORD = "${secret.db.password}"
      }
    }
  }
}
