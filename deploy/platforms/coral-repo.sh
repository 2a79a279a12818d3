# Coral's apt repository (libedgetpu1-std / -max, gasket-dkms, edgetpu-compiler on x86-64). Sourced.
install_coral_repo() {
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | gpg --dearmor -o /etc/apt/keyrings/coral.gpg
  echo "deb [signed-by=/etc/apt/keyrings/coral.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main" \
    > /etc/apt/sources.list.d/coral-edgetpu.list
  apt-get update -qq
}
