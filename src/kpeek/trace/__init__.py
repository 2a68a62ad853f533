"""Run a program under ptrace and record its descriptor tables step by step."""
