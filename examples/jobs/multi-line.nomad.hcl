# Several secrets from several stores in one block: one plugin process,
# read concurrently, all or nothing.
job "multi-line" {
  group "app" {
    task "app" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      secret "app" {
        provider = "aws"
        path     = <<-EOT
          # NAME = reference
          db      = aws-sm:prod/db
          api_key = aws-sm:prod/api#token
          flags   = aws-ssm:/prod/app/feature-flags
        EOT
        env {
          AWS_REGION = "us-east-2"
        }
      }
      env {
        DB_PASSWORD = "${secret.app.db_password}"
        API_KEY     = "${secret.app.api_key}"
        FLAGS       = "${secret.app.flags}"
      }
    }
  }
}
