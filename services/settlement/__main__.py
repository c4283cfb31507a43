from libs.common.bus import run_service
from services.settlement.app import create_service
from services.settlement.settings import SettlementSettings

settings = SettlementSettings()
run_service(lambda: create_service(settings), settings)
