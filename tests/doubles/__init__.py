"""Test doubles: stand-in servers, test environments and helper processes, in one place."""
