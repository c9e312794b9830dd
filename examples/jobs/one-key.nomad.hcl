# One field of a JSON secret in AWS Secrets Manager.
job "one-key" {
  group "app" {
    task "app" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      secret "db" {
        provider = "aws"
        path     = "prod/db#password"
        env {
          AWS_REGION = "us-east-2"
        }
      }
      env {
        DB_PASSWORD = "${secret.db.value}"
      }
    }
  }
}
