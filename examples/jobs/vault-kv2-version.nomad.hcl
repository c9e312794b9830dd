# A pinned version of a Vault / OpenBao KV v2 secret.
job "vault-kv2-version" {
  group "app" {
    task "app" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      secret "signing" {
        provider = "openbao"
        path     = "vault:secret/app/signing?version=2"
      }
      env {
        SIGNING_KEY = "${secret.signing.key}"
      }
    }
  }
}
