"""`python -m shanzhi` is the `shanzhi` command."""

from shanzhi.cli.main import main

main()
