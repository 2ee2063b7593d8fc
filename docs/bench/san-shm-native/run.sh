#!/bin/bash
# measurements for the SAN work, in sequence (started after 08:05 UTC)
cd "$(dirname "$0")/../../.."  # the project root
PY=.venv/bin/python
$PY -m bench.san --rate 3000 --repeat 3 --ab-native > docs/bench/san-shm-native/san3000.txt 2> docs/bench/san-shm-native/san3000.err
$PY -m bench.san --rate 6500 --repeat 3 > docs/bench/san-shm-native/san6500.txt 2> docs/bench/san-shm-native/san6500.err
TCPS_NATIVE=0 $PY -m bench.profile --configs eager-accept,eager-accept/shm/poll=2000/hostpoll=2000 --rate 3000 --seconds 8 --keep docs/bench/san-shm-native/spy-py > docs/bench/san-shm-native/profile-py.txt 2> docs/bench/san-shm-native/profile-py.err
$PY -m bench.profile --configs eager-accept,eager-accept/shm/poll=2000/hostpoll=2000 --rate 3000 --seconds 8 --keep docs/bench/san-shm-native/spy-native > docs/bench/san-shm-native/profile-native.txt 2> docs/bench/san-shm-native/profile-native.err
$PY -m bench.offload --no-percall --repeat 2 --modes regular split setup-with-accept eager-accept split/shm setup-with-accept/shm setup-with-accept/shm/poll=2000/hostpoll=2000 split/shm/poll=2000/hostpoll=2000 --json docs/bench/san-shm-native/offload.json > docs/bench/san-shm-native/offload.txt 2> docs/bench/san-shm-native/offload.err
echo done > docs/bench/san-shm-native/DONE
