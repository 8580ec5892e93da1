"""Hostile input, faults and load: what an attacker or a bad day does, and what must hold."""
