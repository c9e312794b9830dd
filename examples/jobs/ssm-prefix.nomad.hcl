# Every parameter below /prod/app/ (recursively), keys like db_password.
job "ssm-prefix" {
  group "app" {
    task "app" {
      driver = "docker"
      config {
        image = "busybox:1.36"
        args  = ["sleep", "3600"]
      }
      secret "config" {
        provider = "aws-ssm"
        path     = "/prod/app/?recursive=true"
        env {
          AWS_REGION = "us-east-2"
        }
      }
      env {
        DB_PASSWORD = "${secret.config.db_password}"
      }
    }
  }
}
