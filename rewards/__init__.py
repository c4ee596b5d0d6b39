"""Everything that scores a response: AI-feedback judges and hallucination metrics."""
