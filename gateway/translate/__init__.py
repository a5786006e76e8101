"""Pure request, response and stream mappings between the OpenAI formats and Anthropic Messages."""
