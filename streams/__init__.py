"""The running talkstream system: faust app, agents, ingress, adapters, projection, CLI."""
