#!/usr/bin/env bash
# Lists the models the ollama sidecar has, then asks one for a completion over its HTTP API.
set -euo pipefail
echo "models at $MOAT_OLLAMA_URL:"
curl -sf "$MOAT_OLLAMA_URL/api/tags" | jq -r '.models[] | "  \(.name)  \(.size) bytes"'
request=$(jq -n --arg model "qwen2.5-coder:1.5b" --arg prompt "Write a haiku about containers." \
  '{model: $model, prompt: $prompt, stream: false}')
echo "answer:"
curl -sf "$MOAT_OLLAMA_URL/api/generate" -d "$request" | jq -r '.response'
