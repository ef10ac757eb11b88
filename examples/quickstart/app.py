import os

from perdure import Agent, Task, tool
from perdure.durable import DurableExecution, SQLiteDurableStorage


def record(line: str) -> None:
    """Every real execution of a tool appends a line to ledger.txt, so you can count them."""
    with open("ledger.txt", "a") as ledger:
        ledger.write(line + "\n")


@tool
def fetch_orders(source: str) -> list[int]:
    """Fetch the order amounts from a source."""
    record(f"fetch_orders {source}")
    return [120, 80, 45]


@tool
def charge_total(amounts: list[int]) -> str:
    """Charge the total of the orders."""
    record(f"charge_total {sum(amounts)}")
    return f"charged {sum(amounts)}"


@tool
def send_receipt(summary: str) -> str:
    """E-mail a receipt."""
    if os.environ.get("CRASH_BEFORE_RECEIPT"):
        print("crashing on purpose before the receipt is sent", flush=True)
        os._exit(1)  # dies like kill -9: no exception handler, no cleanup
    record(f"send_receipt {summary}")
    return "receipt sent"


storage = SQLiteDurableStorage("executions.db")  # or storage_from_url("sqlite:///executions.db")
agent = Agent("perdure:scripted", name="billing")  # or "openai:gpt-4o-mini" with OPENAI_API_KEY set


def main() -> None:
    task = Task(
        "Fetch the orders from 'orders.csv', charge the total, then send the receipt",
        tools=[fetch_orders, charge_total, send_receipt],
        durable_execution=DurableExecution(storage, auto_cleanup=False),
    )
    print("execution", task.durable_execution_id, flush=True)
    print(agent.do(task))


if __name__ == "__main__":
    import app  # run the importable module `app`, not this `__main__` copy (see below)

    app.main()
