"""``python -m radixlm.launch_server [flags]`` ≡ ``radixlm serve [flags]`` (SGLang's entry point)."""

from __future__ import annotations

import sys

from radixlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
