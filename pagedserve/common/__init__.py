"""Pieces every service uses: configuration, logging, gRPC plumbing."""
