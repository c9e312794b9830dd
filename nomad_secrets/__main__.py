from nomad_secrets.cli import run

run()
