#!/bin/bash
# bench.offload before (03d5fe6, before the configuration work) and after (main), alternated
set -e
for i in 1 2 3; do
  for side in before main; do
    cd /work/$side
    .venv/bin/python -m bench.offload --no-percall --no-haproxy --modes regular split eager-accept \
      --rate 3000 --repeat 1 --seconds 3 --json /work/bench/ab-$side-$i.json > /work/bench/ab-$side-$i.txt 2>&1
  done
done
