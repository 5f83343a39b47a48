

def test_a_runtime_at_another_version_and_a_base_image_are_said() -> None:
    # The sandbox runs the host's own python whatever version moat.yaml asks for: it says so.
    import re
    import shutil
    import subprocess

    from moat.plan.identity import Identity
    from moat.runtime.sandbox import cgroups, hostinfo, launch
    from tests.unit.support import plan_for

    env = launch.base_env(Identity(1000, 1000))  # the agent's PATH, without what uid 1000 cannot enter
    python = shutil.which("python3", path=env["PATH"])
    assert python is not None
    host = subprocess.run([python, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    other = "3.9" if not host.startswith("3.9") else "3.13"
    plan = plan_for(f"dependencies: [python@{other}]\nbase_image: alpine:3.19\n", runtime="sandbox")
    notes = hostinfo.caveats(plan, Identity(1000, 1000), cgroups.Cgroups())
    said = "\n".join(notes)
    assert re.search(rf"python {re.escape(other)} requested: the sandbox runs the host's python {re.escape(host)}",
                     said), said
    assert f"({python})" in said
    assert "base_image (alpine:3.19) is not used" in said
    same = plan_for(f"dependencies: [python@{'.'.join(host.split('.')[:2])}]\n", runtime="sandbox")
    assert not [n for n in hostinfo.caveats(same, Identity(1000, 1000), cgroups.Cgroups()) if "python" in n]
