#!/usr/bin/env bash
# The session life cycle of the brief, with curl against a local ferry-cloud
# and the gateway simulator (control/examples/sim_gateway.rs). Needs jq and
# wireguard-tools. Run from the repository root after
#   cargo build -p ferry-cloud -p ferry-control --example sim_gateway
# It serves on 127.0.0.1:7600 with its data in a temporary folder.
B=${B:-$PWD/target/debug}
cd "$(mktemp -d)" || exit 1
set -e

$B/ferry-cloud serve --no-tls --listen 127.0.0.1:7600 --data-dir ./cloud > serve.out 2> serve.err &
sleep 1
cat serve.out
API=http://127.0.0.1:7600/api/v1
OTP=$(sed -n 's/.*one-time password: //p' serve.out)
# 1. The first Administrator logs in with the one-time password and sets their own.
TOKEN=$(curl -s $API/auth/login -H 'Content-Type: application/json' -d "{\"name\":\"admin\",\"password\":\"$OTP\"}" | jq -r .access_token)
curl -s $API/me/password -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d "{\"current_password\":\"$OTP\",\"new_password\":\"a long admin passphrase\"}" -o /dev/null -w '%{http_code}\n'
TOKEN=$(curl -s $API/auth/login -H 'Content-Type: application/json' -d '{"name":"admin","password":"a long admin passphrase"}' | jq -r .access_token)
H="Authorization: Bearer $TOKEN"; J='Content-Type: application/json'
# 2. A technician (remoteConnect User).
TECH_ID=$(curl -s $API/users -H "$H" -H "$J" -d '{"name":"tech","role":"remote_connect_user","password":"technician passphrase"}' | jq .user.id)
# 3. A gateway with two targets, and its one-time enrolment token.
GW=$(curl -s $API/gateways -H "$H" -H "$J" -d '{"name":"press-4","site":"plant 1","targets":[
  {"name":"plc","address":"192.168.0.10","protocol":"tcp","ports":[{"first":502,"last":502}]},
  {"name":"hmi","address":"192.168.0.11","protocol":"tcp","ports":[{"first":443,"last":443}]}]}')
GW_ID=$(echo "$GW" | jq .gateway.id); ENROL=$(echo "$GW" | jq -r .enrolment.token)
# 4. The gateway enrols once with its own key and connects out (simulated here).
PUB=$($B/examples/sim_gateway keygen gw.key)
curl -s $API/enrol -H "$J" -d "{\"token\":\"$ENROL\",\"identity_key\":\"$PUB\"}"; echo
$B/examples/sim_gateway run ws://127.0.0.1:7600 $GW_ID gw.key off > gw.out 2> gw.err &
SIM=$!
sleep 1
# 5. Prepare a session released to the technician.
SID=$(curl -s $API/sessions -H "$H" -H "$J" -d "{\"name\":\"plc update\",\"gateway_id\":$GW_ID,\"targets\":[\"plc\"],\"released_to\":[$TECH_ID],\"max_duration_s\":3600}" | jq .id)
# 6. The technician starts it: refused while the customer's switch is off.
TT=$(curl -s $API/auth/login -H "$J" -d '{"name":"tech","password":"technician passphrase"}' | jq -r .access_token)
curl -s -X POST $API/sessions/$SID/start -H "Authorization: Bearer $TT"; echo
# The customer switches on (the simulator reconnects with the switch on).
kill $SIM; sleep 0.5
$B/examples/sim_gateway run ws://127.0.0.1:7600 $GW_ID gw.key on > gw.out 2> gw.err &
SIM=$!; sleep 1
curl -s -X POST $API/sessions/$SID/start -H "Authorization: Bearer $TT" | jq -c '{state, expires_ms}'
# 7. The technician's client posts its WireGuard public key for a one-time configuration...
(umask 077; wg genkey > tech.key); TECH_PUB=$(wg pubkey < tech.key)
CONF=$(curl -s $API/sessions/$SID/config -H "Authorization: Bearer $TT" -H "$J" -d "{\"public_key\":\"$TECH_PUB\",\"candidates\":[\"192.0.2.50:51820\"]}")
echo "$CONF" | jq -c 'del(.watch_token)'
# The configuration's own status, with its watch token (not the user's login).
CID=$(echo "$CONF" | jq .config_id); WATCH=$(echo "$CONF" | jq -r .watch_token)
curl -s $API/configs/$CID -H "Authorization: Bearer $WATCH" | jq -c .
# ...or as a wg-quick file for a stock WireGuard client (this revokes the previous one).
curl -s $API/sessions/$SID/config/wg-quick -H "Authorization: Bearer $TT" -H "$J" -d "{\"public_key\":\"$TECH_PUB\"}" > ferry.conf
curl -s $API/configs/$CID -H "Authorization: Bearer $WATCH" | jq -c '{state, detail}'   # revoked: replaced
cat ferry.conf  # a stock client: put tech.key on the PrivateKey line, then wg-quick up
tail -n1 gw.out | jq -c '.sessions[0] | {session_id, targets: [.targets[] | {name, address, proxy_address}], peers: [.peers[] | {public_key, tunnel_address}]}'
# 8. The technician ends it; the gateway's desired state is empty at once.
curl -s -X POST $API/sessions/$SID/end -H "Authorization: Bearer $TT" | jq -c '{state, end_reason}'
sleep 0.3; tail -n1 gw.out | jq -c .
# 9. The audit log: every step, allowed or refused, hash-chained.
curl -s "$API/audit?limit=100" -H "$H" | jq -r '.entries[] | "\(.seq) \(.actor) \(.action) \(.allowed) \(.detail // "")"' 2>/dev/null || true
curl -s $API/audit/verify -H "$H"; echo
kill $SIM; kill %1; wait 2>/dev/null
