"""`python -m wsncli` runs the wsn command line."""

from wsncli.app import main

main()
