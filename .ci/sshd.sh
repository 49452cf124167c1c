#!/usr/bin/env bash
# A throwaway OpenSSH server on 127.0.0.1:${EDGECLS_SSHD_PORT:-2222} and the next port (two "devices"
# for the fleet test) for the SSH device tests:
# its own host key, a fresh client key authorized for the current user, nothing else changed.
# Source it: it exports EDGECLS_TEST_SSH, EDGECLS_TEST_SSH_2, EDGECLS_TEST_SSH_KEY and EDGECLS_TEST_SSH_KNOWN_HOSTS,
# and `edgecls_stop_sshd` stops the server.
set -euo pipefail
if [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
  else
    echo "sshd.sh: no /usr/sbin/sshd and cannot install it; the SSH tests will be skipped" >&2
    return 0 2>/dev/null || exit 0
  fi
fi
port=${EDGECLS_SSHD_PORT:-2222}
dir=$(mktemp -d /tmp/edgecls-sshd.XXXXXX)
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
cp "$dir/client_key.pub" "$dir/authorized_keys"
cat > "$dir/sshd_config" <<CFG
Port $port
Port $((port + 1))
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CFG
mkdir -p /run/sshd
/usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
for _ in $(seq 50); do [ -s "$dir/sshd.pid" ] && break; sleep 0.1; done
# The pinned known_hosts file holds the server's key: with `--known-hosts`, edgecls refuses unknown keys.
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
echo "[127.0.0.1]:$((port + 1)) $(cut -d' ' -f1,2 "$dir/host_key.pub")" >> "$dir/known_hosts"
export EDGECLS_TEST_SSH="ssh://$(id -un)@127.0.0.1:$port"
export EDGECLS_TEST_SSH_2="ssh://$(id -un)@127.0.0.1:$((port + 1))"
export EDGECLS_TEST_SSH_KEY="$dir/client_key"
export EDGECLS_TEST_SSH_KNOWN_HOSTS="$dir/known_hosts"
edgecls_stop_sshd() { [ -s "$dir/sshd.pid" ] && kill "$(cat "$dir/sshd.pid")" 2>/dev/null; rm -rf "$dir"; }
