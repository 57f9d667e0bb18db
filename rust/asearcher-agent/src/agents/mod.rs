//! The agents: ASearcher base agent, Search-R1 agent, prompt-based reasoning agent.
