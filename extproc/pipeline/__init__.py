"""The request pipeline of behaviour.md section 2, one small step per module.

Each step is a pure function of the request state (I/O only where the step is about I/O) and
refuses a request by raising `Rejection` with an entry of the error catalogue.
"""
