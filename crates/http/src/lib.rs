//! Shared HTTP toolkit for chatlake sources: client, retries, rate budgets, auth.
