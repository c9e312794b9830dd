# Nomad client agent config: where Nomad looks for secret provider plugins.
# The plugins live in <common_plugin_dir>/secrets/ (nomad-secrets install
# puts them there). The default is <data_dir>/common_plugins.
client {
  enabled           = true
  common_plugin_dir = "/opt/nomad/data/common_plugins"
}
