"""The operator console (``talkstream console``): what the pipeline did, per site, per person
and per request, and the redrive of dead letters, as server-rendered pages.

``app``       the composition root (routes, templates, the real Kafka-backed log)
``auth``      the operator token, the session cookie, CSRF and the security headers
``pages``     rendering a page (Jinja2, autoescaped) with what every page shows
``queries``   the SQL it reads (the projection, with the indexes of migration 0003)
``log``       what it reads from Kafka: dead letters, a request's webhook and generated text
``pacing``    the workers' per-target pacing, scraped from their ``/metrics``
``chart``     the overview's per-minute SVG chart
``views``     the pages: overview, search, a request and its content, a person
``letters``   the dead letters and the two actions (redrive preview, redrive)
"""
