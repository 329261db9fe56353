# Sourced by the scripts that start the tests' real servers (postfix/relay.sh, dovecot/imap.sh);
# tests/servers.py is their fixtures' side.

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

# test_ca TLSDIR NAME: a test CA (TLSDIR/ca.pem, named NAME) and a certificate it signed for
# localhost and 127.0.0.1 (TLSDIR/server.pem, server.key), unless TLSDIR has them already.
test_ca() {
    local tls=$1
    [ -f "$tls/ca.pem" ] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$tls/san.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 2 -extfile "$tls/san.ext" -out "$tls/server.pem" 2>/dev/null
}
