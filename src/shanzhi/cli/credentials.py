"""Reading a cloud's credentials from a file, so that they never appear on a command line.

The file is YAML or JSON (a mapping of the provider's credential fields), or an AWS-style
shared credentials file (`[profile]` sections of `aws_access_key_id = ...`; the `aws_` prefix
is dropped), or a kubeconfig file (sent as the credential `kubeconfig`). `-` reads standard input.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import yaml


def read_credentials(path: str, profile: str = "default") -> dict[str, str]:
    """The credentials in `path`; ValueError naming what is wrong with the file."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    if text.lstrip().startswith("["):
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error as err:
            raise ValueError(f"{path}: not a credentials file: {err}") from None
        if profile not in parser:
            raise ValueError(f"{path} has no [{profile}] section (has: {', '.join(parser.sections()) or 'none'})")
        return {k.removeprefix("aws_"): v for k, v in parser[profile].items()}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML or JSON: {err}") from None
    if isinstance(data, dict) and {"clusters", "contexts"} <= set(data):  # a kubeconfig file itself
        return {"kubeconfig": text}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path} must hold a mapping of credential names to strings")
    return {str(k): v for k, v in data.items()}
