"""Generation engines behind one small interface: `generate(prompts, sampling) -> list[str]`.

The evaluator uses it today; the server builds on the same engines.
"""
