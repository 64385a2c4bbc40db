"""The talkstream domain: pure pydantic models and rules. No IO, no clock, no frameworks."""
