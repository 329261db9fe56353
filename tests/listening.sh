# Sourced by the scripts that start the tests' real servers (postfix/relay.sh, dovecot/imap.sh).

# wait_listening PORT: true once something accepts connections on 127.0.0.1:PORT, false after
# 30 s (a busy machine starts a server's daemons slowly).
wait_listening() {
    local n
    for n in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
