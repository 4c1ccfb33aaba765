"""`python -m wsncli` runs the wsn command line."""

from wsncli.cli import main

main()
