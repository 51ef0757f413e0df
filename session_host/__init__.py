"""The session host: keeps each account's WhatsApp session, sends the jobs, writes status back."""
