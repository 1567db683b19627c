"""tillpoint.printer: the receipt printer, the customer display and the kiosk scanner.

Nothing here imports python-escpos at import time (see ``_escpos``). The pieces the agent
uses:

- ``queue.enqueue`` / ``queue.PrintWorker``: the durable print queue in the ledger;
- ``payload.payload_for_checkout``, ``codes.offer_code`` / ``codes.parse_offer_code``;
- ``messages``: the 2 × 20 display messages; ``display.CustomerDisplay``: the pole display;
- ``scanner.ScannerReader``: a serial scanner;
- ``service.build_devices`` / ``service.Devices``: all of them, built and started for
  ``tillpoint run`` by agent/app.py;
- ``cli_support.print_test_page`` / ``cli_support.preview``; ``cli``: ``tillpoint print ...``;
- ``virtual.VirtualPrinter`` / ``virtual_display``: stand-ins for tests and the demo.

docs/PRINTING.md describes the whole part.
"""
