# A whole JSON secret: one key per field (username, password, host, port).
job "json-secret" {
  group "app" {
    task "app" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      secret "db" {
        provider = "aws"
        path     = "aws-sm:prod/db"
        env {
          AWS_REGION = "us-east-2"
        }
      }
      env {
        DB_USER     = "${secret.db.username}"
        DB_PASSWORD = "${secret.db.password}"
        DB_HOST     = "${secret.db.host}"
      }
    }
  }
}
