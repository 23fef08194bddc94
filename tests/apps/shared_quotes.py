"""Market-spread-like application: two pipelines sharing one partitioned state.

    python -m wallaroo shared_quotes.py --nbbo nbbo.txt --orders orders.txt \
        --nbbo-output nbbo_out.txt --orders-output orders_out.txt

Pipeline "nbbo" reads ``SYMBOL,bid,ask`` lines and sets the quote of the
symbol. Pipeline "orders" reads ``SYMBOL,qty,price`` lines and checks the order
against the quote currently in the state: ``ok`` when bid <= price <= ask,
``rejected`` otherwise, ``no-quote`` when the symbol has no quote yet.

Both pipelines name the same state, "symbol data", partitioned by symbol (the
declared keys are the symbols of the nbbo file, as market spread loaded its
symbols from a file). Every record of either pipeline ticks the symbol's
``touches`` counter, and each output line reports what it saw:

    nbbo SYMBOL bid ask touches=T orders_seen=O
    order SYMBOL qty price VERDICT touches=T nbbo_seen=N

so a test can rebuild, per symbol, the order in which the two pipelines
reached the shared state, whatever that order was.
"""

import argparse

import wallaroo


def load_symbols(path):
    symbols = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            symbol = line.split(",", 1)[0].strip()
            if symbol and symbol not in symbols:
                symbols.append(symbol)
    return symbols


def application_setup(args):
    parser = argparse.ArgumentParser("shared quotes")
    parser.add_argument("--nbbo", required=True)
    parser.add_argument("--orders", required=True)
    parser.add_argument("--nbbo-output", required=True)
    parser.add_argument("--orders-output", required=True)
    opts, _ = parser.parse_known_args(args)

    symbol_partitions = load_symbols(opts.nbbo)

    ab = wallaroo.ApplicationBuilder("market-spread-like")
    ab.new_pipeline("nbbo", wallaroo.FileSourceConfig(opts.nbbo, nbbo_decoder))
    ab.to_state_partition(
        update_quote, SymbolData, "symbol data", symbol_partition, symbol_partitions
    )
    ab.to_sink(wallaroo.FileSinkConfig(opts.nbbo_output, text_encoder))
    ab.new_pipeline("orders", wallaroo.FileSourceConfig(opts.orders, order_decoder))
    ab.to_state_partition(
        check_order, SymbolData, "symbol data", symbol_partition, symbol_partitions
    )
    ab.to_sink(wallaroo.FileSinkConfig(opts.orders_output, text_encoder))
    return ab.build()


class SymbolData:
    def __init__(self):
        self.bid = None
        self.ask = None
        self.touches = 0
        self.nbbo_seen = 0
        self.orders_seen = 0


class Quote:
    def __init__(self, symbol, bid, ask):
        self.symbol = symbol
        self.bid = bid
        self.ask = ask


class Order:
    def __init__(self, symbol, qty, price):
        self.symbol = symbol
        self.qty = qty
        self.price = price


@wallaroo.decoder(header_length=4, length_fmt=">I")
def nbbo_decoder(bs):
    symbol, bid, ask = bs.decode("utf-8").split(",")
    return Quote(symbol, float(bid), float(ask))


@wallaroo.decoder(header_length=4, length_fmt=">I")
def order_decoder(bs):
    symbol, qty, price = bs.decode("utf-8").split(",")
    return Order(symbol, int(qty), float(price))


@wallaroo.partition
def symbol_partition(data):
    return data.symbol


@wallaroo.state_computation(name="update quote")
def update_quote(quote, state):
    state.bid = quote.bid
    state.ask = quote.ask
    state.touches += 1
    state.nbbo_seen += 1
    return (
        f"nbbo {quote.symbol} {quote.bid!r} {quote.ask!r} "
        f"touches={state.touches} orders_seen={state.orders_seen}",
        True,
    )


@wallaroo.state_computation(name="check order")
def check_order(order, state):
    state.touches += 1
    state.orders_seen += 1
    if state.bid is None:
        verdict = "no-quote"
    elif state.bid <= order.price <= state.ask:
        verdict = "ok"
    else:
        verdict = "rejected"
    return (
        f"order {order.symbol} {order.qty} {order.price!r} {verdict} "
        f"touches={state.touches} nbbo_seen={state.nbbo_seen}",
        True,
    )


@wallaroo.encoder
def text_encoder(data):
    return data + "\n"
