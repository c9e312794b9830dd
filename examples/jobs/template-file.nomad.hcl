# A secret into a file: the secret block feeds the task's env, and a
# template reads it from there ({{ env "..." }}) into a file under secrets/,
# which only the task sees.
job "template-file" {
  group "app" {
    task "app" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      secret "db" {
        provider = "aws"
        path     = "prod/db"
        env {
          AWS_REGION = "us-east-2"
        }
      }
      env {
        DB_USER     = "${secret.db.username}"
        DB_PASSWORD = "${secret.db.password}"
      }
      template {
        destination = "secrets/db.conf"
        perms       = "0400"
        data        = <<-EOT
          user = {{ env "DB_USER" }}
          password = {{ env "DB_PASSWORD" }}
        EOT
      }
    }
  }
}
