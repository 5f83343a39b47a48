"""Network policy: moat.yaml's ``network.rules`` parsed and applied to requests (pure, standard
library only, so that the proxy daemon applies exactly what the plan shows)."""
