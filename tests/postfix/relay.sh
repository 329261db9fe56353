#!/usr/bin/env bash
# A private Postfix instance on loopback, for the tests where a real relay's own behaviour
# matters. Nothing it accepts leaves the machine: every test domain is delivered to Maildirs
# under DIR/mail, and every other transport is `error:`.
#
#   relay.sh start DIR BASEPORT   configure DIR and start (needs root and Debian's postfix)
#   relay.sh stop DIR             stop it
# As root, `postfix -c DIR` needs no entry in the system's main.cf: nothing outside DIR changes.
#
# Listeners (all on 127.0.0.1), BASEPORT + n:
#   0 plain          no TLS, no AUTH
#   1 auth           STARTTLS required, then AUTH (Cyrus sasldb) required
#   2 ratelimit      smtpd_client_message_rate_limit=RATE per anvil_rate_time_unit (10 s)
#   3 connlimit      smtpd_client_connection_count_limit=2
#   4 reject_sender  MAIL FROM refused (553 5.1.8, or 5.1.0 "not owned" for senders notowned*)
#   5 reject_all     every RCPT refused (554 5.7.1 Relay access denied)
#   6 reject_sender_late  as reject_sender, but Postfix's default smtpd_delay_reject=yes: the
#                    sender's refusal comes as the reply to RCPT TO
# Recipients by local part: unknown* 550 5.1.1 at RCPT; blocked* 554 5.7.1 at RCPT; gone*
# accepted then bounced (DSN to the envelope sender); slow* accepted then deferred (delay
# warnings); bounces* into Maildir "bounces"; anything else into Maildir "all".
set -euo pipefail
# shellcheck source=../servers.sh
. "$(dirname "$0")/../servers.sh"

RATE=${RELAY_RATE:-20}
USER_NAME=mailer
PASSWORD=${RELAY_PASSWORD:-relay-test-password}

die() { echo "relay.sh: $*" >&2; exit 1; }

start() {
    local dir base etc
    dir=$(realpath "$1"); base=$2; etc=$dir/etc
    [ "$(id -u)" = 0 ] || die "needs root"
    command -v postfix >/dev/null || die "postfix is not installed (apt-get install postfix)"
    mkdir -p "$etc/sasl" "$etc/tls" "$dir/spool" "$dir/data" "$dir/mail/all" "$dir/mail/bounces"
    chmod 755 "$dir" "$etc" "$etc/sasl" "$etc/tls"

    # The test CA and a certificate for localhost and 127.0.0.1.
    test_ca "$etc/tls" "Top Ten test CA"
    chmod 644 "$etc/tls/server.key"

    printf '%s' "$PASSWORD" | saslpasswd2 -p -c -f "$etc/sasldb2" -u relay.test "$USER_NAME"
    chgrp postfix "$etc/sasldb2" && chmod 640 "$etc/sasldb2"
    cat > "$etc/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $etc/sasldb2
mech_list: PLAIN LOGIN
EOF

    cat > "$etc/domains" <<'EOF'
!/(^|\.)invalid$/ OK
EOF
    cat > "$etc/mailboxes" <<'EOF'
/^bounces/ bounces/
/./ all/
EOF
    cat > "$etc/aliases" <<'EOF'
/^(gone[^@]*)@(.*)$/ $1@dead.invalid
/^(slow[^@]*)@(.*)$/ $1@slow.invalid
EOF
    cat > "$etc/transport" <<'EOF'
/@dead\.invalid$/ error:5.1.1 mailbox unavailable
/@slow\.invalid$/ retry:4.4.1 mailbox busy, try again later
EOF
    cat > "$etc/recipient_access" <<'EOF'
/^unknown[^@]*@/ 550 5.1.1 User unknown
/^blocked[^@]*@/ 554 5.7.1 Access denied
EOF
    cat > "$etc/sender_access" <<'EOF'
/^notowned/ 553 5.1.0 not owned by user
/./ 553 5.1.8 Domain not found
EOF
    cat > "$etc/reject_all" <<'EOF'
/./ 554 5.7.1 Relay access denied
EOF

    cat > "$etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/spool
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = relay.test
mydomain = relay.test
myorigin = relay.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
biff = no
# Nothing leaves this machine.
default_transport = error:5.7.1 this test relay delivers nothing off the machine
relay_transport = error:5.7.1 this test relay delivers nothing off the machine
local_transport = error:5.7.1 this test relay has no local users
virtual_mailbox_domains = regexp:$etc/domains
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = regexp:$etc/mailboxes
virtual_alias_maps = regexp:$etc/aliases
transport_maps = regexp:$etc/transport
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access regexp:$etc/recipient_access
# Loopback clients are exempt from rate and connection limits unless this is emptied.
smtpd_client_event_limit_exceptions =
anvil_rate_time_unit = 10s
smtpd_tls_cert_file = $etc/tls/server.pem
smtpd_tls_key_file = $etc/tls/server.key
smtpd_tls_security_level = may
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $etc/sasl
smtpd_sasl_local_domain = relay.test
# Quick queue turns, so that bounces and delay warnings arrive within seconds.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 1s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
EOF

    local s=smtpd
    cat > "$etc/master.cf" <<EOF
127.0.0.1:$((base + 0)) inet n - n - - $s
127.0.0.1:$((base + 1)) inet n - n - - $s -o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes -o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:$((base + 2)) inet n - n - - $s -o smtpd_client_message_rate_limit=$RATE
127.0.0.1:$((base + 3)) inet n - n - - $s -o smtpd_client_connection_count_limit=2
127.0.0.1:$((base + 4)) inet n - n - - $s -o smtpd_delay_reject=no -o smtpd_sender_restrictions=check_sender_access,regexp:$etc/sender_access
127.0.0.1:$((base + 5)) inet n - n - - $s -o smtpd_recipient_restrictions=check_recipient_access,regexp:$etc/reject_all
127.0.0.1:$((base + 6)) inet n - n - - $s -o smtpd_sender_restrictions=check_sender_access,regexp:$etc/sender_access
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

    chown -R 65534:65534 "$dir/mail"
    chown postfix "$dir/data"
    postfix -c "$etc" check >/dev/null 2>&1 || postfix -c "$etc" check
    postfix -c "$etc" start 2>&1 | grep -v 'starting the Postfix mail system' >&2 || true
    wait_listening "$base" || die "postfix did not start listening on 127.0.0.1:$base (see $dir/maillog)"
    echo "relay started: 127.0.0.1:$base..$((base + 6)), mail in $dir/mail"
}

stop() {
    local dir etc
    dir=$(realpath "$1"); etc=$dir/etc
    postfix -c "$etc" stop >/dev/null 2>&1 || true
}

case "${1:-}" in
    start) [ $# -eq 3 ] || die "usage: relay.sh start DIR BASEPORT"; start "$2" "$3" ;;
    stop) [ $# -eq 2 ] || die "usage: relay.sh stop DIR"; stop "$2" ;;
    *) die "usage: relay.sh start DIR BASEPORT | relay.sh stop DIR" ;;
esac
