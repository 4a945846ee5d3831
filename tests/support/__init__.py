"""Test infrastructure: real Redis/Valkey servers (servers.py) and a fault-injecting proxy."""
