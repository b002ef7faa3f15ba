"""Delivering finished replies: the dispatcher's jobs, each channel's configuration and the verification of users'
destinations."""
