"""An OpenAI-compatible API's answer for a model it does not serve
(``streams.clients.openai_chat.missing_model``): OpenAI says ``model_not_found``, the servers
users point ``TALKSTREAM_OPENAI_BASE_URL`` at say it in words, each its own. Those words, for
the model asked for, refuse the model a while (``ModelNotFound``); every other 404 (a path the
API does not have: a base URL without ``/v1``) or 400 stays what it was. The messages are the
servers' own, as their answers carry them."""

from __future__ import annotations

import pytest

from streams.clients.openai_chat import missing_model


@pytest.mark.parametrize(
    ("status", "message", "model"),
    [
        # Ollama's /v1 (its native error in OpenAI's envelope, "type": "api_error", later
        # "not_found_error", "code": null): the model quoted with Go's %q
        (404, 'model "llama9" not found, try pulling it first', "llama9"),
        (404, 'model "gemma3:12b" not found, try pulling it first', "gemma3:12b"),
        # ... and with single quotes, by its older handlers and some of its routes
        (404, "model 'llama3:latest' not found, try pulling it first", "llama3:latest"),
        (404, "model 'custom-phi3-32k-Q4_K_M' not found", "custom-phi3-32k-Q4_K_M"),
        # vLLM ({"object": "error", ..., "type": "NotFoundError", "code": 404}, later in an
        # envelope with "param": "model")
        (404, "The model `meta-llama/Llama-3.1-8B-Instruct` does not exist.",
         "meta-llama/Llama-3.1-8B-Instruct"),
        # LiteLLM's proxy: a 400, its HTTPException's detail as the message (a dict's repr)
        (400, "{'error': '/chat/completions: Invalid model name passed in model=gpt-4.1. Call "
              "`/v1/models` to view available models for your key.'}", "gpt-4.1"),
        # ... in its versions before the route and the hint were added
        (400, "400: {'error': 'Invalid model name passed in model=Lite-GPT-12'}", "Lite-GPT-12"),
        # LocalAI, since it checks the name first ("type": "invalid_request_error")
        (404, 'model "llama9" not found. To see available models, call GET /v1/models', "llama9"),
        # ... and before (2.x): a 500 after every backend failed, one finding no file for it
        (500, "could not load model - all backends returned error: 9 errors occurred:\n\t* could "
              "not load model: rpc error: code = Canceled desc = \n\t* could not load model: rpc "
              "error: code = Unknown desc = stat /home/gy/local-ai/models/gpt-4: no such file or "
              "directory\n\t* grpc process not found: /tmp/localai/backend_data/backend-assets/"
              "grpc/stablediffusion. some backends(stablediffusion, tts) require LocalAI compiled "
              "with GO_TAGS", "gpt-4"),
        (500, "could not load model: rpc error: code = Unknown desc = stat /models/phi-2.Q8_0."
              "gguf: no such file or directory", "phi-2.Q8_0.gguf"),
    ],
)  # fmt: skip
def test_a_compatible_apis_missing_model_is_a_missing_model(
    status: int, message: str, model: str
) -> None:
    assert missing_model(status, message, model)


@pytest.mark.parametrize(
    ("status", "message", "model"),
    [
        # a 404 of the path, not of the model: the base URL without /v1 (OpenAI's, FastAPI's,
        # a web server's page, which has no message)
        (404, "Invalid URL (POST /chat/completions)", "gpt-4o-mini"),
        (404, "Not Found", "gpt-4o-mini"),
        (404, None, "gpt-4o-mini"),
        # Azure's missing deployment names none in words: its code says it (DeploymentNotFound,
        # read as OpenAI's model_not_found is, not by this)
        (404, "The API deployment for this resource does not exist. If you created the "
              "deployment within the last 5 minutes, please wait a moment and try again.",
         "gpt-4o-mini"),
        # another model than the one asked for: not this one's refusal
        (404, 'model "llama9" not found, try pulling it first', "llama3"),
        (404, "The model `gpt-4o` does not exist.", "gpt-4o-mini"),
        # LiteLLM not reading the request's model (a body it could not parse says model=None)
        (400, "{'error': '/chat/completions: Invalid model name passed in model=None. Call "
              "`/v1/models` to view available models for your key.'}", "gpt-4o"),
        # ... nor a longer name that starts with the model's
        (400, "{'error': '/chat/completions: Invalid model name passed in model=gpt-4.1. Call "
              "`/v1/models` to view available models for your key.'}", "gpt-4"),
        # the words at a status no server gives them with: vLLM's 400s are about the request
        (400, "The model `gpt-4o-mini` does not exist.", "gpt-4o-mini"),
        (422, 'model "gpt-4o-mini" not found', "gpt-4o-mini"),
        # a 400 that names the model for another reason
        (400, "This model's maximum context length is 8192 tokens", "gpt-4o-mini"),
        # LocalAI's 500 for a model it has, whose backend crashed or ran out of memory: an
        # outage, waited out (a file missing for another model is not this one's)
        (500, "could not load model: rpc error: code = Unavailable desc = error reading from "
              "server: EOF", "llama9"),
        (500, "could not load model - all backends returned error: 1 error occurred:\n\t* could "
              "not load model: rpc error: code = Unknown desc = failed loading model", "llama9"),
        (500, "could not load model: rpc error: code = Unknown desc = stat /models/llama9-q4."
              "gguf: no such file or directory", "llama9"),
        (500, "could not load model: rpc error: code = Unknown desc = stat /models/llama9: no "
              "such file or directory", "llama"),
        # any other 500, and the words at another status
        (500, "The server had an error while processing your request. Sorry about that!",
         "gpt-4o-mini"),
        (503, "could not load model: rpc error: code = Unknown desc = stat /models/llama9: no "
              "such file or directory", "llama9"),
    ],
)  # fmt: skip
def test_any_other_answer_is_not_a_missing_model(
    status: int, message: str | None, model: str
) -> None:
    assert not missing_model(status, message, model)


def test_a_model_name_is_matched_as_it_is_not_as_a_pattern() -> None:
    """A name holding a regular expression's characters (``.``, ``+``) is the name itself."""
    assert missing_model(404, "The model `qwen2.5+r1` does not exist.", "qwen2.5+r1")
    assert not missing_model(404, "The model `qwen2x5r1` does not exist.", "qwen2.5+r1")
