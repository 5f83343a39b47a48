"""moat's credential proxy: one shared mitmproxy daemon per MOAT_HOME that authenticates each run by
its proxy token, puts the run's grants into its requests, keeps the agent off the host's own
addresses and traces every request.

Nothing is imported here: the daemon runs in a virtualenv of its own (mitmproxy), the rest of moat
talks to it through ``moat.proxy.client`` and must not pay for mitmproxy.
"""
