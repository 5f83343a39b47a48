#!/bin/sh
# Runs in the agent's container: it holds a placeholder, and its request still authenticates.
set -eu
echo "EXAMPLE_API_KEY in the container: $EXAMPLE_API_KEY"
curl -sS --fail https://api.example.test/v1/me
echo
