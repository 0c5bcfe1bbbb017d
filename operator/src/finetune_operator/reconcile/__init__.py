"""Reconcile functions: what the Kopf handlers call. Each reads the world, computes with pure functions, writes."""
