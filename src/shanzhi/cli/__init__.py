"""The `shanzhi` command line. Client commands talk to the API only, through `shanzhi.client`."""
