"""Two modules that each define an activity named `send_report`: loading both must fail."""
