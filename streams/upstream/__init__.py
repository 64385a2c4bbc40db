"""Upstream targets and how calls to them are paced (DESIGN.md §2, Tenants and upstream limits).

A *target* is what an upstream limits: an OpenAI key (its RPM and TPM are that customer's), a
Talkable site. ``limits`` reads what an upstream says about its limits; ``pacer`` decides
when a target may be called; ``scheduler`` shares the executor's capacity fairly between
targets and runs each command through its target's pacer.
"""
