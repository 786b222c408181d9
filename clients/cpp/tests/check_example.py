"""ctest: the explaind-explain example run as clients/cpp/README.md says, against the fixture's servers
(server_fixture.py): its heatmap is the PNG the Python client gets for the same request, byte for byte,
and its errors exit 1 (server) or 2 (flags) with one line naming the problem.

    check_example.py EXPLAIND_EXPLAIN STATE OUT_DIR"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from explaind_client import ExplaindClient, RenderSpec


def run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=240)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    return struct.unpack(">II", png[16:24])


def main(binary: str, state_path: str, out_dir: str) -> int:
    state = dict(line.split("=", 1) for line in Path(state_path).read_text().splitlines())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = str(Path(state["demo"]) / "examples" / "circle_0.png")
    failures: list[str] = []
    checks: list[str] = []

    def check(condition: bool, what: str) -> None:
        print(("ok: " if condition else "FAILED: ") + what)
        checks.append(what)
        if not condition:
            failures.append(what)

    # the README's command, with the fixture's port
    heat = out / "heat.png"
    result = run(binary, "--server", state["plain"], "--model", "shapes", "--image", image, "--out", str(heat),
                 "--method", "rise", "--param", "num_masks=2000", "--seed", "7", "--quiet")
    check(result.returncode == 0, f"README command exits 0 ({result.returncode}: {result.stderr.strip()})")
    check("target: circle (class 0)" in result.stdout, f"prints the target: {result.stdout!r}")
    png = heat.read_bytes() if heat.exists() else b""
    check(png_size(png) == (64, 64), "writes a 64 x 64 PNG")
    with ExplaindClient(state["plain"]) as client:
        reference = client.explain("shapes", method="rise", image=image, seed=7, params={"num_masks": 2000},
                                   render=RenderSpec())
    check(png == reference.heatmap_png, "the same PNG as the Python client's for the same request")

    occlusion = out / "occlusion.png"
    result = run(binary, "--server", state["plain"], "--model", "shapes", "--image", image, "--out", str(occlusion),
                 "--method", "occlusion", "--param", "window=8,8", "--param", "stride=4,4", "--polarity", "both")
    check(result.returncode == 0, f"occlusion with list parameters exits 0 ({result.stderr.strip()})")
    check("227 model evaluations" in result.stdout, f"1 + 1 + 15 x 15 rows: {result.stdout!r}")
    check(result.stderr == "explaining 100% (226/226 rows)\n",
          f"without a terminal, only the last progress line on stderr: {result.stderr!r}")

    result = run(binary, "--server", state["plain"], "--model", "no-such-model", "--image", image, "--out",
                 str(out / "x.png"), "--quiet")
    check(result.returncode == 1 and result.stderr.startswith("explaind-explain: NOT_FOUND: ")
          and "no-such-model" in result.stderr, f"unknown model: exit 1, NOT_FOUND ({result.stderr.strip()})")
    result = run(binary, "--server", state["plain"], "--model", "shapes", "--image", image, "--out",
                 str(out / "x.png"), "--param", "masks=3")
    check(result.returncode == 2 and 'rise has no parameter "masks"; it has num_masks, grid_size, keep_probability, '
          "baseline" in result.stderr, f"unknown parameter: exit 2 naming it ({result.stderr.strip()})")
    result = run(binary, "--server", state["plain"], "--model", "shapes", "--image", image, "--out",
                 str(out / "x.png"), "--param", "num_masks=many")
    check(result.returncode == 2 and 'rise.num_masks: expected a number (int32), got "many"' in result.stderr,
          f"bad parameter value: exit 2 ({result.stderr.strip()})")
    result = run(binary, "--model", "shapes", "--image", str(out / "absent.png"), "--out", str(out / "x.png"))
    check(result.returncode == 2 and "absent.png: cannot read it" in result.stderr,
          f"missing image: exit 2 ({result.stderr.strip()})")

    secure = ["--server", state["secure"], "--tls-ca", state["ca"], "--model", "shapes", "--image", image,
              "--method", "saliency", "--quiet"]
    result = run(binary, *secure, "--out", str(out / "tls.png"), "--token", state["token"])
    check(result.returncode == 0, f"TLS with the CA and the token: exit 0 ({result.stderr.strip()})")
    result = run(binary, *secure, "--out", str(out / "x.png"))
    check(result.returncode == 1 and "UNAUTHENTICATED" in result.stderr, f"no token: UNAUTHENTICATED ({result.stderr.strip()})")

    print(f"{len(checks) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
